"""Start the LoRA Atelier studio: `python app.py` (127.0.0.1:7860); `python app.py --help` lists the flags."""
import sys

from ui.launch import is_loopback, loopback_only_hosts, main, parse_auth  # noqa: F401  (tests import these here)

if __name__ == "__main__":
    sys.exit(main())

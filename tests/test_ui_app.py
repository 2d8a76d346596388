"""app.py refuses to expose the studio without a password (before it even imports Gradio)."""
import subprocess
import sys
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parent.parent / "app.py"


@pytest.mark.parametrize("args", [["--host", "0.0.0.0"], ["--share"], ["--host", "192.168.1.5", "--auth", "nopass"]])
def test_exposure_without_auth_is_refused(tmp_path, args):
    p = subprocess.run([sys.executable, str(APP), "--data-dir", str(tmp_path / "d"), *args],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    assert "--auth" in p.stderr
    assert not (tmp_path / "d").exists()  # refused before creating anything


def test_loopback_checks():
    sys.path.insert(0, str(APP.parent))
    from app import is_loopback, parse_auth
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.org")
    assert parse_auth("me:pw:x") == ("me", "pw:x")

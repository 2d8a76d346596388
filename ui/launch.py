"""Start the LoRA Atelier studio (127.0.0.1:7860): `python app.py` or the `lora-atelier` command."""
from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from pathlib import Path

LOOPBACK = {"localhost", "127.0.0.1", "::1"}


def is_loopback(host: str) -> bool:
    if host in LOOPBACK:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def loopback_only_hosts() -> list:
    """Refuse requests whose Host header is not a loopback name. Bound to 127.0.0.1 the studio is
    still reachable by a web page that points its own domain at 127.0.0.1 (DNS rebinding); such
    requests carry that domain as Host, and Gradio's origin check only applies to localhost hosts."""
    from starlette.middleware import Middleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    return [Middleware(TrustedHostMiddleware, allowed_hosts=["127.0.0.1", "localhost", "::1", "[::1]"])]


def parse_auth(text: str | None) -> tuple[str, str] | None:
    if not text:
        return None
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise ValueError("--auth must be user:password")
    return user, password


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="LoRA Atelier: train Stable Diffusion LoRAs in the browser.")
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this computer only)")
    ap.add_argument("--port", type=int, default=7860)
    ap.add_argument("--auth", help="user:password; required with a non-loopback --host or --share")
    ap.add_argument("--share", action="store_true", help="public Gradio share link (needs --auth)")
    ap.add_argument("--data-dir", default=str(Path(__file__).resolve().parent.parent / "data"),
                    help="where runs, datasets, presets and the run store live")
    ap.add_argument("--models-dir", action="append", default=[],
                    help="extra folder the base-model picker may read checkpoints from (repeatable)")
    ap.add_argument("--max-upload-mb", type=int, default=200, help="largest single upload (zip or image)")
    ap.add_argument("--no-queue", action="store_true",
                    help="this studio queues runs but does not start them (`python -m trainer queue run` or "
                         "another studio on the same data folder works the queue)")
    a = ap.parse_args(argv)
    try:
        auth = parse_auth(a.auth)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if (a.share or not is_loopback(a.host)) and auth is None:
        print(f"error: refusing to expose the studio ({'--share' if a.share else f'--host {a.host}'}) without a "
              f"password: anyone who reaches it could run training jobs and read your files. Add --auth user:password.",
              file=sys.stderr)
        return 2

    data_dir = Path(a.data_dir).expanduser().resolve()
    # Gradio keeps uploads and its cache inside the data folder, so nothing it serves lives elsewhere
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ["GRADIO_TEMP_DIR"] = str(data_dir / ".gradio" / "uploads")
    os.environ["GRADIO_EXAMPLES_CACHE"] = str(data_dir / ".gradio" / "cache")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from ui.workspace import Studio
    from ui.dataset_files import Limits
    from ui.page import CSS, build_app

    limits = Limits(max_file_bytes=min(50, a.max_upload_mb) * 2**20, max_zip_total_bytes=2 * 2**30)
    studio = Studio.create(data_dir, a.models_dir, limits)
    studio.calibration.refresh(busy=studio.runner.active() is not None)  # ready by the first estimate
    from ui.runs import QueueWorker

    if not a.no_queue:
        QueueWorker(studio).start()  # continues the queue left by an earlier studio, if any
    demo = build_app(studio)
    demo.queue(default_concurrency_limit=4)
    print(f"LoRA Atelier: data in {data_dir}", flush=True)
    demo.launch(server_name=a.host, server_port=a.port, auth=auth, share=a.share, show_error=True,
                app_kwargs={"middleware": loopback_only_hosts()} if is_loopback(a.host) and not a.share else None,
                # generate/: the Generate tab's grids drawn from adapter files (a run's grids stay in its folder)
                allowed_paths=[str(studio.dirs.runs), str(studio.dirs.datasets), str(studio.dirs.root / "generate")],
                blocked_paths=[str(data_dir / "runs.sqlite"), str(data_dir / "presets")],
                max_file_size=f"{a.max_upload_mb}mb", css=CSS, footer_links=[],
                # Gradio's own start-up check gives the new server one 3-second HEAD request and aborts the
                # launch if it times out: on a busy machine (a run training beside the studio) it did, about
                # 4 starts in 10. The server is up either way; the page loads when the machine catches up.
                _frontend=False)
    return 0


"""Path traversal: hostile names and paths against every route of the real server and every handler field that
takes a name or a path. A canary file with a random token lies next to the data folder and in /tmp (and
symlinks inside the data folder point at it); no response, download or written file may contain the token,
and nothing may be written outside the data folder."""
from __future__ import annotations

import http.client
import io
import json
import os
import secrets
import sys
import time
import urllib.parse
from pathlib import Path

import pytest
from PIL import Image

from tests.browser.studio_server import studio_server

TOKEN = f"CANARY-{secrets.token_hex(12)}"


def png_bytes(color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(buf, "PNG")
    return buf.getvalue()


def traversal_payloads(near: Path, tmp_canary: Path) -> list[str]:
    """Names and paths that try to leave the data folder (≥ 40 distinct ones)."""
    nm, n2 = near.name, tmp_canary.name
    deep = "../" * 12
    return list(dict.fromkeys([
        # absolute paths and ../ chains
        str(near), str(tmp_canary), "/etc/passwd", "//" + str(near).lstrip("/"), str(near) + "/.",
        "../" + nm, "../../" + nm, "../../../" + nm, "../../../../" + nm, deep + str(tmp_canary).lstrip("/"),
        "images/../../../" + nm, "./../" + nm, "....//....//" + nm, "..././..././" + nm, "..;/" + nm,
        # URL-encoded and double-encoded
        "%2e%2e%2f" + nm, "%2e%2e/%2e%2e/" + nm, "..%2f..%2f..%2f" + nm, "%2e%2e%5c" + nm,
        "%252e%252e%252f" + nm, "..%252f..%252f" + nm, str(tmp_canary).replace("/", "%2f"),
        "%c0%ae%c0%ae/" + nm, "..%c0%af" + nm, "..%e2%88%95" + nm,
        # backslashes, drives, UNC
        "..\\" + nm, "..\\..\\..\\" + nm, "..\\/..\\/" + nm, "C:\\Windows\\win.ini", "\\\\server\\share\\" + nm,
        # null bytes, control characters, whitespace
        "../" + nm + "\x00.png", nm + "\x00", "\x00", "..\n/" + nm, " ../" + nm, "../" + nm + " ", "\t..",
        # unicode look-alike dots and slashes
        "\uff0e\uff0e\uff0f" + nm, "\u2024\u2024/" + nm, "..\u2215" + nm, "..\u2044" + nm, "\u2025/" + n2,
        "\u0000\u202e../" + nm,
        # special names
        ".", "..", "...", "~", "~/", "~root", "$HOME", "${HOME}/.bashrc", "CON", "NUL", "PRN.txt", "AUX",
        "COM1", "LPT1.png",
        # URLs
        "file://" + str(near), "file:///etc/passwd", "file:" + str(near), "http://127.0.0.1:1/" + nm,
        # very long names
        "a" * 300, "a/" * 2000, "x" * 5000, "../" * 2000 + nm,
        # symlinks planted inside the data folder (see `world`)
        "evil-link", "evil-link/" + nm, "images/evil.png", "images/evil.txt", "evil-ds", "presets/tiny-test.toml",
    ]))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A data folder with a dataset, a run with an adapter, a model, and symlinks that point at the canary."""
    root = tmp_path_factory.mktemp("sec")
    near = root / "canary-near.txt"
    near.write_text(f"{TOKEN} next to the data folder\n")
    tmp_canary = Path("/tmp") / f"atelier-canary-{secrets.token_hex(6)}.txt"
    tmp_canary.write_text(f"{TOKEN} in /tmp\n")
    outside_dir = root / "outside"
    outside_dir.mkdir()
    (outside_dir / near.name).write_text(f"{TOKEN} in a folder outside\n")
    (outside_dir / "evil.png").write_bytes(png_bytes() + TOKEN.encode())  # a valid PNG with the token appended
    data = root / "data"
    ds = data / "datasets" / "set" / "images"
    ds.mkdir(parents=True)
    for i in range(2):
        (ds / f"{i}.png").write_bytes(png_bytes((40 * i, 90, 200)))
        (ds / f"{i}.txt").write_text("a photo of a sks cat")
    (ds / "evil.png").symlink_to(outside_dir / "evil.png")
    (ds / "evil.txt").symlink_to(near)
    (ds / "2.png").write_bytes(png_bytes((9, 9, 9)))
    (ds / "2.txt").symlink_to(near)  # a real image whose caption sidecar points outside
    (ds.parent / "evil-link").symlink_to(outside_dir)
    (data / "datasets" / "evil-ds").symlink_to(outside_dir)
    (data / "models").mkdir(parents=True)
    (data / "models" / "evil-link").symlink_to(outside_dir)
    (data / "models" / "linked.safetensors").symlink_to(near)
    (data / "presets").mkdir(parents=True)
    (data / "presets" / "evil.toml").symlink_to(near)

    from safetensors.torch import save_file
    import torch
    from trainer.config import load_preset, save_config
    from ui.workspace import Studio
    studio = Studio.create(data, python=str(_recorder(root)))
    rid = studio.store.new_id("victim")
    rd = studio.run_dir(rid)
    (rd / "output").mkdir(parents=True)
    (rd / "samples").mkdir()
    cfg = load_preset("tiny-test")
    cfg.dataset.path = str(rd / "dataset")
    save_config(cfg, rd / "config.toml")
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(2, 2)}, str(rd / "output" / "tiny-test.safetensors"))
    (rd / "samples" / "evil.png").symlink_to(outside_dir / "evil.png")
    (rd / "export").mkdir()
    (rd / "evil-link").symlink_to(outside_dir)
    events = [{"type": "sample", "step": 1, "kind": "adapter", "seed": 1, "prompt": "p", "path": p}
              for p in ("samples/evil.png", str(near), "../../../" + near.name, "evil-link/evil.png")]
    events += [{"type": "finished", "step": 1, "adapter": str(near)},
               {"type": "checkpoint", "step": 1, "adapter": "evil-link/" + near.name}]
    (rd / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    studio.store.add(rid, "victim", cfg.model.base, "tiny-test", rd, 1)
    yield dict(root=root, data=data, near=near, tmp_canary=tmp_canary, outside=outside_dir, studio=studio,
               run_id=rid, payloads=traversal_payloads(near, tmp_canary))
    tmp_canary.unlink(missing_ok=True)


def _recorder(root: Path) -> Path:
    """Stands in for the Python interpreter the studio starts the trainer with: records argv, prints '[]'."""
    p = root / "fake-python"
    p.write_text(f"#!{sys.executable}\nimport json, sys\n"
                 f"open({str(root / 'argv.jsonl')!r}, 'a').write(json.dumps(sys.argv) + '\\n')\nprint('[]')\n")
    p.chmod(0o755)
    return p


def _outside_snapshot(world) -> dict[str, tuple[int, int]]:
    """Every file outside the data folder (in the test root and /tmp's top level) with its size and mtime; a file
    missing from a later snapshot was deleted."""
    out = {}
    for base in (world["root"], Path("/tmp")):
        for dirpath, dirnames, files in os.walk(base):
            d = Path(dirpath)
            if d == world["data"] or world["data"] in d.parents:
                dirnames[:] = []
                continue
            if base == Path("/tmp") and d != base:
                dirnames[:] = []
                continue
            for f in files:
                try:
                    st = (d / f).lstat()
                except OSError:
                    continue
                out[str(d / f)] = (st.st_size, st.st_mtime_ns)
    return out


def _new_outside_files(world, before: dict) -> list[str]:
    after = _outside_snapshot(world)
    changed = [p for p, v in after.items() if before.get(p) != v] + [p for p in before if p not in after]
    # other programs write to /tmp too: count only what names our token or lies under our test root
    ours = [p for p in changed if p.startswith(str(world["root"]))
            and Path(p).name != "argv.jsonl" and not Path(p).name.startswith("app-")]  # recorder and server logs
    return ours + [p for p in changed if TOKEN in p and p not in ours]


def _data_files_with_token(data: Path) -> list[str]:
    hits = []
    for dirpath, _, files in os.walk(data):  # os.walk does not follow the planted symlinks
        for f in files:
            p = Path(dirpath) / f
            if p.is_symlink():
                continue
            try:
                if TOKEN.encode() in p.read_bytes():
                    hits.append(str(p))
            except OSError:
                pass
    return hits


# ---------------------------------------------------------------- the handlers, called in-process
def _handlers(studio):
    from ui.page import build_app
    demo = build_app(studio)
    return {fn.api_name: _Handler(fn.fn, fn.inputs, fn.outputs) for fn in demo.fns.values()}


class _Handler:
    """A tab handler and its output components; records which outputs hand files to Gradio to serve."""
    served: list[str] = []

    def __init__(self, fn, inputs, outputs):
        self.fn, self.inputs, self.outputs = fn, inputs, outputs

    def call(self, values: dict):
        """Call with some inputs set (by elem_id, or by position for those without one); the rest at default."""
        args = [getattr(b, "value", None) for b in self.inputs]
        ids = [getattr(b, "elem_id", None) for b in self.inputs]
        for key, v in values.items():
            if isinstance(key, int):
                args[key] = v
            elif key in ids:
                args[ids.index(key)] = v
            else:  # a LookupError, never a ValueError: the test counts it as a crash, not as a refusal
                raise LookupError(f"{self.fn.__name__} has no input {key!r} (it has {ids})")
        return self(*args)

    def __call__(self, *args):
        import gradio as gr
        out = self.fn(*args)
        values = list(out) if isinstance(out, tuple) and len(self.outputs) > 1 else [out]
        _Handler.served = [path for comp, v in zip(self.outputs, values)
                           if isinstance(comp, (gr.Gallery, gr.File, gr.Image)) for path in _paths_in(v)]
        return out


def _calls(world, p: str, upload_file: str):
    """(field, thunk) for every handler field that takes a name or a path, with payload p in it.

    Handlers are found by their api_name and fed by their inputs' elem_ids, every other input at its default:
    a handler that gains an input keeps working here, and an elem_id that no longer exists fails loudly."""
    h, rid = world["h"], world["run_id"]
    form = {"cfg-schedule-max_train_steps": 1}
    start = {"train-dataset": "set", "train-run-name": "r", "train-base": "tiny:sd1", **form}
    ed = {"ds": "set", "rel": p}  # the editor's image, as if the page had it open
    grid = {"gen-source": "A run", "gen-run": p, "gen-prompt": "x"}
    return [
        ("dataset name (upload)", lambda: h["on_upload"].call({"ds-upload": [upload_file], "ds-name": p,
                                                               "ds-folder": "images"})),
        ("upload folder", lambda: h["on_upload"].call({"ds-upload": [upload_file], "ds-name": "set", "ds-folder": p})),
        ("dataset name (refresh)", lambda: h["on_datasets_refresh"].call({"ds-name": p, "train-dataset": p})),
        ("dataset name (switch)", lambda: h["on_switch"].call({"ds-name": p})),
        ("image pick (caption)", lambda: h["on_pick"].call({"ds-name": "set", "ds-image": p})),
        ("dataset name (caption)", lambda: h["on_pick"].call({"ds-name": p, "ds-image": "images/0.png"})),
        ("image pick (save caption)", lambda: h["on_save"].call({"ds-name": "set", "ds-image": p,
                                                                 "ds-caption": "a caption"})),
        ("dataset name (save caption)", lambda: h["on_save"].call({"ds-name": p, "ds-image": "images/0.png",
                                                                   "ds-caption": "a caption"})),
        ("editor image (exclude)", lambda: h["on_exclude"].call({"ds-name": "set", 1: ed})),
        ("editor image (delete)", lambda: h["on_delete"].call({"ds-name": "set", 1: ed})),
        ("excluded image (restore)", lambda: h["on_restore"].call({"ds-name": "set", "ds-excluded-pick": p})),
        ("dataset name (bulk preview)", lambda: h["on_bulk_preview"].call({"ds-name": p, "ds-bulk-op": "trigger",
                                                                           "ds-bulk-a": "sks"})),
        ("dataset name (bulk tools)", lambda: h["on_bulk"].call({"ds-name": p, "ds-bulk-op": "trigger",
                                                                 "ds-bulk-a": "sks"})),
        ("repeats folder", lambda: h["on_repeats"]("set", p, 3)),
        ("dataset name (repeats)", lambda: h["on_repeats"](p, "images", 3)),
        ("dataset name (doctor)", lambda: h["on_doctor"].call({"ds-name": p})),
        ("preset", lambda: h["on_preset"].call({"train-preset": p})),
        ("user preset", lambda: h["on_preset"].call({"train-preset": "user/" + p})),
        ("preset save name", lambda: h["on_save_preset"].call({0: p, "train-base": "tiny:sd1", **form})),
        ("base model (estimate)", lambda: h["on_estimate"].call({"train-dataset": "set", "train-base": p, **form})),
        ("dataset (estimate)", lambda: h["on_estimate"].call({"train-dataset": p, "train-base": "tiny:sd1", **form})),
        ("base model (train)", lambda: h["on_start"].call({**start, "train-base": p})),
        ("dataset (train)", lambda: h["on_start"].call({**start, "train-dataset": p})),
        ("run name (train)", lambda: h["on_start"].call({**start, "train-run-name": p})),
        ("preset name (train)", lambda: h["on_start"].call({**start, "train-preset": p})),
        ("separate VAE", lambda: h["on_start"].call({**start, "cfg-model-vae": p})),
        ("start-from adapter", lambda: h["on_start"].call({**start, "cfg-network-init_weights": p})),
        ("regularisation folder", lambda: h["on_start"].call({**start, "cfg-dataset-reg_path": p})),
        ("validation folder", lambda: h["on_start"].call({**start, "cfg-validation-path": p})),
        ("caption extension", lambda: h["on_start"].call({**start, "cfg-dataset-caption_extension": p})),
        ("base model (queue)", lambda: h["on_enqueue"].call({**start, "train-base": p})),
        ("dataset (queue)", lambda: h["on_enqueue"].call({**start, "train-dataset": p})),
        ("run name (queue)", lambda: h["on_enqueue"].call({**start, "train-run-name": p})),
        ("run id (save queued run)", lambda: h["on_save_queued"].call({0: p, "train-base": "tiny:sd1", **form})),
        ("run id (queue: move up)", lambda: h["on_queue_up"].call({"runs-pick": p})),
        ("run id (queue: remove)", lambda: h["on_queue_remove"].call({"runs-pick": p})),
        ("run id (stop)", lambda: h["on_stop"](p)),
        ("run id (sample now)", lambda: h["on_sample_now"](p)),
        ("run id (save now)", lambda: h["on_save_now"](p)),
        ("run id (resume)", lambda: h["on_resume"].call({0: p})),
        ("run id (progress)", lambda: h["on_tick"](p, None)),
        ("run id (re-open)", lambda: h["on_run_change"](p)),
        ("run id (runs: open)", lambda: h["on_open"].call({"runs-pick": p})),
        ("run id (runs: delete)", lambda: h["on_delete_1"].call({"runs-pick": p})),
        ("run id (generate pick)", lambda: h["on_pick_run"].call({"gen-run": p})),
        ("run id (generate grid)", lambda: h["on_grid"].call(grid)),
        ("checkpoint pick (generate grid)", lambda: h["on_grid"].call({**grid, "gen-run": rid, "gen-ckpt-pick": [p]})),
        ("adapter file (generate grid)", lambda: h["on_grid"].call({**grid, "gen-source": "Adapter files",
                                                                    "gen-adapter": [p], "gen-base": "tiny:sd1"})),
        ("base model (generate grid)", lambda: h["on_grid"].call({**grid, "gen-source": "Adapter files",
                                                                  "gen-adapter": [], "gen-base": p})),
        ("uploaded adapter (generate)", lambda: h["on_adapter_upload"].call({"gen-upload": p})),
        ("run id (compare checkpoints)", lambda: h["on_ckpts"].call({"gen-run": p, "gen-prompt": "x"})),
        ("run id (export info)", lambda: h["on_run"].call({"exp-run": p})),
        ("run id (download)", lambda: h["on_download"].call({"exp-run": p})),
        ("run id (adapter info)", lambda: h["on_meta_saved"].call({"exp-run": p})),
        ("run id (bundle)", lambda: h["on_bundle"].call({"exp-run": p})),
        ("checkpoint pick (export)", lambda: h["on_ckpt"](rid, p)),
        ("run id (export checkpoint)", lambda: h["on_ckpt"](p, "output/x.safetensors")),
        ("run id (sample browser)", lambda: h["samples_of"](p)),
        ("image (mask painter)", lambda: h["on_mask_load"]({"ds": "my-dataset", "rel": p})),
        ("dataset (mask painter)", lambda: h["on_mask_save"]({"ds": p, "rel": "a.png"}, None)),
        ("image (mask remove)", lambda: h["on_mask_remove"]({"ds": "my-dataset", "rel": p}, None)),
        ("run id (check)", lambda: h["on_check"].call({"exp-run": p})),
        ("run id (metadata)", lambda: h["on_meta"](p, "t", "w", "d", None)),
        ("thumbnail (metadata)", lambda: h["on_meta"](rid, "t", "w", "d", p)),
        ("dataset name (page load)", lambda: h["on_load"].call({"ds-name": p})),
        ("run (open in generate)", lambda: h["on_open_in_generate"](p)),
        ("run (open in export)", lambda: h["on_open_in_export"](p)),
    ]


@pytest.mark.slow
def test_handler_fields_never_leave_the_data_folder(world, monkeypatch):
    import gradio as gr
    monkeypatch.chdir(world["outside"])  # a relative payload that escapes resolves next to the canaries
    studio = world["studio"]
    h = _handlers(studio)
    world.update(h=h)
    upload = world["root"] / "upload"
    upload.mkdir()
    up = upload / "cat.png"
    up.write_bytes(png_bytes())
    before = _outside_snapshot(world)
    canaries = {p: p.read_bytes() for p in (world["near"], world["tmp_canary"])}
    tried = refused = 0
    fields = set()
    leaks, crashes = [], []
    for p in world["payloads"]:
        for field, call in _calls(world, p, str(up)):
            tried += 1
            fields.add(field)
            _Handler.served = []
            try:
                out = call()
            except (gr.Error, ValueError) as e:  # UnsafePath and ConfigError are ValueErrors: a clean refusal
                refused += 1
                out = str(e)
            except Exception as e:  # noqa: BLE001 - any other exception is a bug in the handler
                crashes.append(f"{field} ← {p[:60]!r}: {type(e).__name__}: {str(e)[:300]}")
                continue
            text = repr(out)
            if TOKEN in text:
                leaks.append(f"{field} ← {p[:60]!r}: token in the response")
            for path in _Handler.served:
                try:
                    if TOKEN.encode() in Path(path).read_bytes():
                        leaks.append(f"{field} ← {p[:60]!r}: returns {path}, which holds the token")
                except OSError:
                    pass
    time.sleep(1.0)  # the runner's watcher threads record the fake trainers' exits
    written_outside = _new_outside_files(world, before)
    in_data = _data_files_with_token(world["data"])
    print(f"\npath-traversal payloads tried: {len(world['payloads'])}")
    print(f"handler fields attacked: {len(fields)}; handler calls: {tried}; cleanly refused: {refused}")
    reached = _paths_the_trainer_got(world)
    print(f"trainer starts with payload values: {len(reached)}; path fields outside the data folder: "
          f"{sum(not ok for _, ok in reached)}")
    assert not crashes, "\n".join(crashes[:40])
    assert reached and all(ok for _, ok in reached), [r for r, ok in reached if not ok][:20]
    assert not leaks, "\n".join(leaks[:40])
    assert not written_outside, written_outside[:20]
    assert not in_data, in_data
    assert all(p.read_bytes() == b for p, b in canaries.items())
    assert len(world["payloads"]) >= 40


def _names_hub_id(parse_base, v: str) -> bool:
    try:
        return parse_base(v).kind == "hub"
    except ValueError:
        return False


def _paths_the_trainer_got(world) -> list[tuple[str, bool]]:
    """(field=value, inside the data folder?) for each path field of each config the fake trainer was given."""
    from trainer.config import REPO_ROOT, load_config
    from trainer.models.spec import parse_base
    from ui.tab_train import BUNDLED_DATASETS
    data = world["data"].resolve()
    out = []
    for line in (world["root"] / "argv.jsonl").read_text().splitlines():
        argv = json.loads(line)
        if argv[1:4] != ["-m", "trainer", "train"]:
            continue
        cfg = load_config(argv[4])
        for key in ("model.base", "model.vae", "network.init_weights", "dataset.reg_path", "validation.path",
                    "dataset.path"):
            section, name = key.split(".")
            v = getattr(getattr(cfg, section), name)
            hub_id = key == "model.base" and _names_hub_id(parse_base, v) and not (REPO_ROOT / v).exists()
            bundled = key in ("dataset.reg_path", "validation.path") and Path(v).resolve().is_relative_to(BUNDLED_DATASETS)
            ok = bool(not v or v.startswith(("tiny:", "builtin:")) or hub_id or bundled
                      or Path(v).resolve().is_relative_to(data))
            out.append((f"{key}={v[:80]}", ok))
    return out


def _paths_in(out) -> list[str]:
    """File paths a handler hands to Gradio (gallery items, file lists)."""
    found = []

    def walk(x):
        if isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)
        elif isinstance(x, str) and x.startswith("/") and len(x) < 4096 and "\x00" not in x:
            if Path(x).is_file():
                found.append(x)
    walk(out)
    return found


# ---------------------------------------------------------------- the real server's routes
def _wire(p: str) -> str:
    """p as it goes on the wire: printable ASCII as is (so %2e stays %2e), the rest percent-encoded."""
    return urllib.parse.quote(p, safe="".join(chr(c) for c in range(0x21, 0x7F)))


def _get(host: str, port: int, path: str) -> tuple[int, bytes]:
    c = http.client.HTTPConnection(host, port, timeout=30)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


@pytest.fixture(scope="module")
def server(world):
    # --no-queue: the handler test queues runs with payload names in this data folder; this server must not
    # train them (a real trainer per queued run, one after another, for the rest of the module)
    with studio_server(world["data"], "--no-queue") as url:
        u = urllib.parse.urlsplit(url)
        yield u.hostname, u.port


def test_routes_serve_no_byte_outside_the_data_folder(world, server):
    host, port = server
    data = world["data"]
    prefixes = ["", f"{data}/runs/", f"{data}/datasets/", f"{data}/datasets/set/images/",
                f"{data}/.gradio/uploads/", f"{data}/runs/{world['run_id']}/"]
    routes = ["/gradio_api/file={}", "/file={}", "/gradio_api/file/{}", "/static/{}", "/assets/{}",
              "/gradio_api/proxy={}", "/{}", "/gradio_api/{}", "/gradio_api/custom_component/x/client/{}/a"]
    before = _outside_snapshot(world)
    requests, served, leaks = 0, 0, []
    for p in world["payloads"]:
        for route in routes:
            for prefix in (prefixes if "file" in route else [""]):
                for enc in (_wire(prefix + p), urllib.parse.quote(prefix + p, safe="/")):
                    requests += 1
                    status, body = _get(host, port, route.format(enc))
                    served += status == 200
                    if TOKEN.encode() in body:
                        leaks.append(f"{route.format(enc)[:120]} → {status}")
    written_outside = _new_outside_files(world, before)
    print(f"\npath-traversal payloads tried against routes: {len(world['payloads'])}; "
          f"HTTP requests: {requests}; routes: {len(routes)}")
    assert not leaks, leaks[:20]
    assert not written_outside
    # the route does serve files that are inside the allowed folders (so the refusals above mean something)
    ok, body = _get(host, port, "/gradio_api/file=" + urllib.parse.quote(f"{data}/datasets/set/images/0.png"))
    assert ok == 200 and body.startswith(b"\x89PNG")


def test_upload_file_names_stay_in_the_upload_folder(world, server):
    host, port = server
    uploads = (world["data"] / ".gradio" / "uploads").resolve()
    before = _outside_snapshot(world)
    stored = 0
    for i, p in enumerate(world["payloads"]):
        name = p.replace("\r", "").replace("\n", "").replace('"', "") + f"-up{TOKEN}-{i}.png"
        boundary = "secboundary" + secrets.token_hex(4)
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
                f"Content-Type: image/png\r\n\r\n").encode("utf-8") + png_bytes() + f"\r\n--{boundary}--\r\n".encode()
        c = http.client.HTTPConnection(host, port, timeout=30)
        c.request("POST", "/gradio_api/upload", body=body,
                  headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        r = c.getresponse()
        resp = r.read()
        c.close()
        if r.status != 200:
            continue
        for path in json.loads(resp):
            assert Path(path).resolve().is_relative_to(uploads), (p, path)
            stored += 1
    leaked = [f for f in _new_outside_files(world, before) if "up" + TOKEN in f]
    tmp_hits = [str(f) for f in Path("/tmp").glob(f"*{TOKEN}*")]
    print(f"\nupload file-name payloads tried: {len(world['payloads'])}; stored (inside the upload folder): {stored}")
    assert stored >= len(world["payloads"]) - 5  # Gradio keeps most, renamed; none lands outside
    assert not leaked and not tmp_hits


def test_forged_file_paths_in_queue_calls_are_refused(world, server):
    """A client naming a server file (not an upload) as a File input: Gradio refuses it before our handler."""
    host, port = server
    targets = [str(world["near"]), str(world["tmp_canary"]), str(world["outside"] / "evil.png"),
               f"{world['data']}/datasets/set/images/evil.png", f"{world['data']}/datasets/set/images/2.txt",
               f"{world['data']}/.gradio/uploads/../../../{world['near'].name}", "file://" + str(world["near"])]
    session = "sec" + secrets.token_hex(6)
    for i, target in enumerate(targets):
        payload = {"data": [[{"path": target, "orig_name": "x.txt", "meta": {"_type": "gradio.FileData"}}],
                            "set", "images"], "fn_index": 0, "session_hash": session, "event_data": None,
                   "trigger_id": None}
        c = http.client.HTTPConnection(host, port, timeout=30)
        c.request("POST", "/gradio_api/queue/join", body=json.dumps(payload),
                  headers={"Content-Type": "application/json"})
        r = c.getresponse()
        r.read()
        c.close()
        assert r.status == 200
        stream = _sse_until_completed(host, port, session)
        assert TOKEN not in stream
        assert '"success": false' in stream.replace('"success":false', '"success": false'), stream[-600:]
    assert not _data_files_with_token(world["data"])
    print(f"\nforged server paths in File inputs tried: {len(targets)}; all refused")


def _sse_until_completed(host: str, port: int, session: str, timeout: float = 60) -> str:
    c = http.client.HTTPConnection(host, port, timeout=timeout)
    c.request("GET", f"/gradio_api/queue/data?session_hash={session}")
    r = c.getresponse()
    lines, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = r.fp.readline().decode("utf-8", "replace")
        if not line:
            break
        lines.append(line)
        if "process_completed" in line:
            break
    c.close()
    return "".join(lines)

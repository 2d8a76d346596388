"""Shell metacharacters and option injection: hostile run names, trigger words, captions and prompts go through
the real handlers and the real subprocess calls; no command ever runs (marker files never appear) and no value
ever becomes an option of the trainer's command line. Plus a static check: product code has no shell."""
from __future__ import annotations

import ast
import json
import secrets
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
PRODUCT = ["app.py", "trainer", "ui", "scripts"]


def shell_payloads(marker: Path | str) -> list[str]:
    """≥ 30 payloads; one that ran a command would create the file `<marker>N` (a relative marker lands in the
    subprocess's working folder)."""
    m = lambda i: Path(f"{marker}{i}")  # noqa: E731
    return [
        f"; touch {m(1)}", f"$(touch {m(2)})", f"`touch {m(3)}`", f"| touch {m(4)}", f"&& touch {m(5)}",
        f"|| touch {m(6)}", f"a\ntouch {m(7)}", f"a\r\ntouch {m(8)}", f"'; touch {m(9)}; '", f'"; touch {m(10)}; "',
        f"> {m(11)}", f">> {m(12)}", f"< /etc/passwd > {m(13)}", f"${{IFS}}touch${{IFS}}{m(14)}",
        f"& touch {m(15)} &", f"$( touch {m(16)} )", f"<(touch {m(17)})", f"%0atouch {m(18)}",
        f"--set=saving.output_name=../../{m(19).name}", "--set saving.output_name=x --resume", "--resume",
        "--", "-- --help", "-h", "--help", "-rf", "-rf /", f"--run-dir={m(20)}", f"--out={m(21)}",
        f"--out {m(22)}", f"--adapter={m(23)}", "--json", "-1", "-", "*", "?", "[a-z]*", "~/*", "{a,b}",
        "!!", "$HOME", "${PATH}", f"\\; touch {m(24)}", f"\x00; touch {m(25)}", "%s%s%s%n", "' OR 1=1 --",
        f"$(python3 -c 'open(\"{m(26)}\",\"w\")')",
    ]


def png(path: Path, color) -> None:
    Image.new("RGB", (64, 64), color).save(path)


def recorder(root: Path) -> Path:
    """Stands in for the interpreter: records argv; for `meta` writes --out, for `generate` prints '[]'."""
    p = root / "fake-python"
    p.write_text(f"""#!{sys.executable}
import json, sys
open({str(root / 'argv.jsonl')!r}, 'a').write(json.dumps(sys.argv) + '\\n')
if sys.argv[3:4] == ['meta']:
    out = [a.split('=', 1)[1] for a in sys.argv if a.startswith('--out=')]
    open(out[0], 'wb').write(open(sys.argv[4], 'rb').read())
print('[]')
""")
    p.chmod(0o755)
    return p


def studio_with_dataset(data: Path, python: str):
    from ui.workspace import Studio
    studio = Studio.create(data, python=python)
    ds = studio.dirs.dataset_dir("set") / "images"
    ds.mkdir(parents=True)
    for i in range(2):
        png(ds / f"{i}.png", (90 * i, 120, 200))
        (ds / f"{i}.txt").write_text("a photo of a sks cat")
    return studio


def handlers(studio):
    from ui.page import build_app
    demo = build_app(studio)
    fns = {}
    for fn in demo.fns.values():
        fns.setdefault(fn.name, fn)
    form = fns["on_start"].inputs[4:]
    keys = [b.elem_id.removeprefix("cfg-").replace("-", ".", 1) for b in form]
    return {k: f.fn for k, f in fns.items()}, keys, [b.value for b in form]


def form_values(keys, values, **over):
    v = list(values)
    for k, x in over.items():
        v[keys.index(k.replace("__", "."))] = x
    return v


def wait_exit(studio, rid, timeout=60):
    deadline = time.monotonic() + timeout
    while studio.runner.active() == rid and time.monotonic() < deadline:
        time.sleep(0.05)


def test_payloads_never_run_and_never_become_options(tmp_path):
    """Every payload through the real handlers and the real subprocess launch (a recording interpreter)."""
    import gradio as gr
    from trainer.config import load_config
    from ui import dataset_files as df
    from ui.tab_generate import _generate
    markers = tmp_path / "markers"
    markers.mkdir()
    payloads = shell_payloads(markers / "pwned-")
    studio = studio_with_dataset(tmp_path / "data", str(recorder(tmp_path)))
    h, keys, values = handlers(studio)
    argv_log = tmp_path / "argv.jsonl"
    started = refused = 0
    for p in payloads:
        # run name, trigger words, preview prompts and negative prompt in one Train press
        vals = form_values(keys, values, schedule__max_train_steps=1, saving__trigger_phrase=p,
                           sampling__prompts=p, sampling__negative_prompt=p, saving__description=p)
        run_state, msg = h["on_start"]("set", p, None, "tiny:sd1", *vals)
        assert msg.startswith("Started run"), msg
        started += 1
        rid = run_state
        wait_exit(studio, rid)
        argv = json.loads(argv_log.read_text().splitlines()[-1])
        cfg_path = studio.run_dir(rid) / "config.toml"
        assert argv[1:] == ["-m", "trainer", "train", str(cfg_path)]  # the user's text is not on the command line
        cfg = load_config(cfg_path)
        assert cfg.saving.trigger_phrase == p.strip() or cfg.saving.trigger_phrase == p
        assert cfg.sampling.negative_prompt == p
        assert studio.store.get(rid)["name"] == p
        assert rid.startswith(time.strftime("%Y")) and "/" not in rid and " " not in rid

        # captions: save one, then the bulk tools with the payload as trigger / prefix / replace text
        img = "images/0.png"
        h["on_save"]("set", img, p)
        # read back as text: universal newlines turn \r\n into \n
        assert df.read_caption(studio.dirs.dataset_dir("set") / img) == p.strip().replace("\r\n", "\n")
        for op in ("trigger", "prefix", "suffix", "replace"):
            try:
                h["on_bulk"]("set", op, p, p, img)
            except Exception as e:  # noqa: BLE001 - only an empty find text may be refused
                assert op == "replace" and not p, e
                refused += 1

        # generate: prompt, negative prompt and strengths reach `trainer generate` as values of their options
        if "\x00" in p:  # the OS cannot pass a null byte in argv: refused with a message, nothing launched
            with pytest.raises(gr.Error, match="null"):
                _generate(studio, rid, [studio.run_dir(rid) / "output" / "x.safetensors"], p, p, 1, 1, 7.0, p)
            refused += 1
            continue
        _generate(studio, rid, [studio.run_dir(rid) / "output" / "x.safetensors"], p, p, 1, 1, 7.0, p)
        gen = json.loads(argv_log.read_text().splitlines()[-1])
        assert gen[1:4] == ["-m", "trainer", "generate"]
        for opt in ("--prompt", "--negative", "--strengths"):
            assert f"{opt}={p}" in gen, (opt, p, gen)
        assert all(a.startswith("--") or a == "generate" for a in gen[3:]), gen
        outs = [a[6:] for a in gen if a.startswith("--out=")]
        assert len(outs) == 1 and Path(outs[0]).is_relative_to(studio.run_dir(rid)), gen

    # export metadata: title / trigger / description payloads become `--set=key=value` of `trainer meta`
    rid = run_state
    out = studio.run_dir(rid) / "output"
    out.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file
    import torch
    name = load_config(studio.run_dir(rid) / "config.toml").saving.output_name
    save_file({"w": torch.zeros(1)}, str(out / f"{name}.safetensors"))
    for p in payloads:
        if "\x00" in p:
            with pytest.raises(gr.Error, match="null"):
                h["on_meta"](rid, p, p, p, None)
            continue
        h["on_meta"](rid, p, p, p, None)
        meta = json.loads(argv_log.read_text().splitlines()[-1])
        assert meta[3] == "meta" and f"--set=title={p}" in meta and f"--set=trigger={p}" in meta
    left = sorted(markers.iterdir())
    print(f"\nshell-metacharacter payloads tried: {len(payloads)} (run name, trigger words, preview prompts, "
          f"negative prompt, description, caption, 4 bulk caption tools, generate prompt/negative/strengths, "
          f"metadata title/trigger/description); trainer launches: {started}; marker files created: {len(left)}")
    assert len(payloads) >= 30
    assert not left, left


@pytest.mark.slow
def test_real_trainer_generate_and_meta_take_payloads_as_text(tmp_path):
    """The real `python -m trainer` train / generate / meta with hostile values: they run, nothing executes,
    option-looking values stay values."""
    from safetensors import safe_open
    from trainer.config import load_config
    from ui.tab_generate import _generate
    from ui.runner import resolve_state
    # relative markers: the adapter's metadata refuses absolute paths (privacy); a shell would run in the
    # trainer's working folder (the repository), so that is where a marker would appear
    tag = f"atelier-pwned-{secrets.token_hex(4)}"
    payloads = shell_payloads(f"{tag}-")
    studio = studio_with_dataset(tmp_path / "data", sys.executable)
    ds = studio.dirs.dataset_dir("set") / "images"
    (ds / "0.txt").write_text(payloads[0] + ", " + payloads[2])  # captions the trainer reads
    (ds / "1.txt").write_text(payloads[1] + " " + payloads[7])
    h, keys, values = handlers(studio)
    trigger, prompt = f"sks; touch {tag}-t $(touch {tag}-u)", f"--out={tag}-o -h"
    vals = form_values(keys, values, schedule__max_train_steps=2, dataset__resolution=64, dataset__batch_size=2,
                       dataset__enable_buckets=False, dataset__cache_to_disk=False, network__rank=4,
                       precision__mixed_precision="no", sampling__every_n_steps=0, sampling__at_start=False,
                       sampling__prompts=f"{prompt}\n{payloads[4]}", sampling__steps=2, sampling__with_base=False,
                       saving__trigger_phrase=trigger)
    rid, msg = h["on_start"]("set", payloads[0], None, "tiny:sd1", *vals)
    assert msg.startswith("Started run"), msg
    run_dir = studio.run_dir(rid)
    deadline = time.monotonic() + 300
    while resolve_state(run_dir)["state"] not in ("finished", "failed", "stopped"):
        assert time.monotonic() < deadline, (run_dir / "trainer.log").read_text()[-2000:]
        time.sleep(0.5)
    wait_exit(studio, rid)
    info = studio.runner.refresh(rid)
    assert info["state"] == "finished", (run_dir / "trainer.log").read_text()[-2000:]
    name = load_config(run_dir / "config.toml").saving.output_name  # the adapter is named after its run
    adapter = run_dir / "output" / f"{name}.safetensors"
    with safe_open(str(adapter), "pt") as f:
        assert f.metadata()["modelspec.trigger_phrase"] == trigger

    imgs = _generate(studio, rid, [adapter], prompt, "-h", 1, 2, 7.0, "0,1")
    assert len(imgs) == 2 and all(Path(p).is_file() for p, _ in imgs)

    title = f"--out={tag}-evil; touch {tag}-m"
    h["on_meta"](rid, title, trigger, "-rf /", None)
    edited = run_dir / "export" / f"{name}.safetensors"
    with safe_open(str(edited), "pt") as f:
        md = f.metadata()
    assert md["modelspec.title"] == title and md["modelspec.description"] == "-rf /"
    left = [p for base in (REPO, Path.cwd(), Path("/tmp")) for p in base.glob(f"{tag}*")]
    left += [p for p in tmp_path.rglob(f"{tag}*")]  # run ids carry the run name too, but never at the start
    print(f"\nreal trainer/generate/meta runs with shell payloads: 3; marker files created: {len(left)}")
    assert not left, left


SHELL_CALLS = {("os", "system"), ("os", "popen"), ("os", "execl"), ("os", "execlp"), ("os", "execle"),
               ("os", "execlpe"), ("os", "spawnl"), ("os", "spawnlp"), ("commands", "getoutput"),
               ("subprocess", "getoutput"), ("subprocess", "getstatusoutput"), ("pty", "spawn")}


def shell_uses(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        name = (f.value.id, f.attr) if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else None
        if name in SHELL_CALLS:
            found.append(f"{path}:{node.lineno}: {name[0]}.{name[1]}")
        for kw in node.keywords:
            if kw.arg == "shell" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                found.append(f"{path}:{node.lineno}: shell={ast.unparse(kw.value)}")
        if name and name[0] == "subprocess" and node.args and isinstance(node.args[0], (ast.Constant, ast.JoinedStr)):
            found.append(f"{path}:{node.lineno}: subprocess.{name[1]} with a command string")
    return found


def test_product_code_has_no_shell(tmp_path):
    files = [p for entry in PRODUCT for p in ((REPO / entry).rglob("*.py") if (REPO / entry).is_dir() else [REPO / entry])]
    bad = [hit for p in files for hit in shell_uses(p)]
    # the checker itself catches each form it looks for
    probe = tmp_path / "probe.py"
    probe.write_text("import os, subprocess\nos.system('x')\nos.popen('x')\nsubprocess.run('x', shell=True)\n"
                     "subprocess.call('ls')\nsubprocess.run(['a'], shell=False)\n")
    assert len(shell_uses(probe)) == 5
    print(f"\nproduct files checked for a shell: {len(files)}; shell uses found: {len(bad)}")
    assert len(files) > 30
    assert not bad, bad

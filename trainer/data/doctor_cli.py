"""`python -m trainer doctor FOLDER`: check a dataset before training and say what is wrong, file by file.

Exit status: 0 when the dataset is usable (warnings and notes may still be printed), 1 when nothing in
it can be used. --json prints the findings as one JSON object for scripts.
"""
from __future__ import annotations

import argparse
import json
import sys

from trainer.data.crops import crop_counts
from trainer.data.masks import mask_counts
from trainer.data.scan import DatasetError, doctor, scan_dataset


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m trainer doctor", description=__doc__.split("\n")[0])
    ap.add_argument("folder", help="dataset folder (images + caption sidecars, optional N_name subfolders)")
    ap.add_argument("--caption-ext", default=".txt", help="caption sidecar extension (.caption is also read)")
    ap.add_argument("--repeats", type=int, default=1, help="repeats for folders not named N_name")
    ap.add_argument("--resolution", type=int, default=512, help="training resolution, to flag small images")
    ap.add_argument("--max-aspect", type=float, default=2.0, help="widest bucket, to flag images to be cropped")
    ap.add_argument("--masked-loss", action="store_true",
                    help="the run trains with masked loss: count the images with and without a mask, warn when none "
                         "has one")
    ap.add_argument("--quick", action="store_true",
                    help="read headers only (does not find truncated files, nor masks in transparency)")
    ap.add_argument("--json", action="store_true", help="machine-readable output")
    args = ap.parse_args(argv)
    try:
        scan = scan_dataset(args.folder, args.caption_ext, args.repeats, check_images=not args.quick)
    except DatasetError as e:
        if args.json:
            print(json.dumps({"ok": False, "error": str(e),
                              "problems": [vars(p) for p in e.problems]}, ensure_ascii=False))
        else:
            print(f"error: {e}", file=sys.stderr)
            for p in e.problems:
                print(f"  {p}", file=sys.stderr)
        return 1
    findings = doctor(scan, args.resolution, args.max_aspect, masked_loss=args.masked_loss)
    masks = mask_counts(scan.items)
    if args.json:
        print(json.dumps({"ok": True, "images": scan.num_images, "samples_per_epoch": scan.num_samples,
                          "folders": scan.folders, "masks": masks, "crops": crop_counts(scan.items),
                          "problems": [vars(p) for p in findings]},
                         ensure_ascii=False))
        return 0
    print(f"{scan.num_images} usable image(s), {scan.num_samples} sample(s) per epoch")
    if args.masked_loss:
        print(f"  masks: {masks['file']} from _mask files, {masks['alpha']} from transparency, {masks['none']} none")
    for folder, d in scan.folders.items():
        print(f"  {folder}: {d['img_count']} image(s) × {d['n_repeats']}")
    for p in findings:
        print(str(p))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

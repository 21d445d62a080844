"""Write the RSNA Pneumonia split files read by RSNA_zeroshot.py and the pre-training validation.

Each line is `relative/path.dcm label` (1 = pneumonia), the path relative to --rsna_root.
Two ways to get them:
  * from Kaggle's `stage_2_train_labels.csv` (several rows per patient with boxes; a patient's
    label is its largest `Target`): a stratified, seeded split into train/val/test lists;
  * --from_list: split lists published elsewhere, checked and copied unchanged.
"""
import argparse
import shutil
from pathlib import Path

from util.eval_data import (parse_split_lines, read_rsna_labels, require_file, require_images, stratified_split,
                            write_split_file)
from util.evaluation import run_script

SPLITS = ("train", "val", "test")


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rsna_root", default="RSNA_dataset",
                        help="where the split files go; their image paths are relative to it")
    parser.add_argument("--labels", help="Kaggle labels CSV (default: <rsna_root>/stage_2_train_labels.csv)")
    parser.add_argument("--image_dir", default="stage_2_train_images",
                        help="folder of the <patientId>.dcm files, relative to --rsna_root")
    parser.add_argument("--fractions", type=float, nargs=3, default=[0.7, 0.15, 0.15], metavar=SPLITS,
                        help="shares of the patients in the train, val and test lists (stratified by label)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--from_list", nargs="+", metavar="FILE",
                        help="published split files to check and copy into --rsna_root unchanged")
    parser.add_argument("--check_images", action="store_true", help="also check that every listed image exists")
    return parser


def split_from_labels(args, rsna_root: Path) -> list[Path]:
    patients = read_rsna_labels(args.labels or rsna_root / "stage_2_train_labels.csv")
    paths = [f"{args.image_dir}/{patient}.dcm" for patient in patients["patientId"]]
    labels = patients["label"].to_numpy()
    if args.check_images:
        require_images([str(rsna_root / p) for p in paths], "the labels CSV", "check --rsna_root and --image_dir")
    written = []
    for name, part in zip(SPLITS, stratified_split(labels, args.fractions, args.seed)):
        target = rsna_root / f"{name}_list.txt"
        write_split_file(target, [paths[i] for i in part], labels[part])
        print(f"{target}: {len(part)} images, {int(labels[part].sum())} with pneumonia")
        written.append(target)
    return written


def copy_published_lists(args, rsna_root: Path) -> list[Path]:
    written = []
    for source in map(Path, args.from_list):
        entries = parse_split_lines(require_file(source, "split file").read_text(), source)
        if args.check_images:
            require_images([str(rsna_root / rel) for rel, _ in entries], f"split file {source}",
                           "check --rsna_root")
        target = rsna_root / source.name
        if not (target.exists() and target.samefile(source)):
            shutil.copyfile(source, target)
        print(f"{target}: {len(entries)} images, {sum(label for _, label in entries)} with pneumonia")
        written.append(target)
    return written


def main(argv=None) -> list[Path]:
    args = build_parser().parse_args(argv)
    rsna_root = Path(args.rsna_root)
    rsna_root.mkdir(parents=True, exist_ok=True)
    return copy_published_lists(args, rsna_root) if args.from_list else split_from_labels(args, rsna_root)


if __name__ == "__main__":
    run_script(main)

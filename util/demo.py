"""The whole ALTA pipeline on generated data, on the CPU in a minute or two: `./run.sh --demo`
(or `python -m util.demo --output DIR`).

1. Generates, under the output directory,
     data/        MIMIC-CXR-JPG-like studies (some without a lateral view or a prior study) and train.csv
     cxr_bert/    a tiny CXR-BERT-format text encoder;  MRM.pth  a tiny MRM-format vision checkpoint
     benchmarks/  miniature CheXpert 8x200, CheXpert 5x200 and RSNA sets in the real formats
2. pre-trains `alta_tiny` for two epochs from MRM.pth with RSNA validation after each epoch
   (training/: checkpoints, log.txt, TensorBoard logs), and
3. runs the five evaluation scripts on the last checkpoint (results/: one JSON file each).
The numbers mean nothing (a tiny model, synthetic images); the demo shows the pipeline works.
"""
import argparse
import importlib
import json
import shutil
import time
from pathlib import Path

import main_pretrain
from engine_pretrain import LOG_FILE, NEWEST_CHECKPOINT
from models_alta import ARCHITECTURES
from util.assets import write_cxr_bert_dir, write_mrm_checkpoint
from util.demo_benchmarks import make_demo_benchmarks
from util.demo_data import make_demo_mimic
from util.misc import format_duration

MODEL = "alta_tiny"
EVALUATION_SCRIPTS = ("CheXpert8X200_img2img", "CheXpert8X200_txt2img", "CheXpert5X200_retrieval",
                      "CheXpert5X200_zeroshot", "RSNA_zeroshot")
GENERATED = ("data", "cxr_bert", "MRM.pth", "benchmarks", "training", "results")


def banner(text: str) -> None:
    print(f"\n{'=' * 16} {text} {'=' * max(3, 60 - len(text))}", flush=True)


def clear_previous_run(root: Path) -> None:
    """Remove what an earlier demo wrote here (and nothing else)."""
    for name in GENERATED:
        path = root / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def generate_inputs(root: Path) -> dict[str, list[str]]:
    """Write the demo's data, text encoder, MRM checkpoint and benchmarks; return each script's data flags."""
    make_demo_mimic(root / "data", n_studies=24, image_size=128)
    write_cxr_bert_dir(root / "cxr_bert")
    write_mrm_checkpoint(root / "MRM.pth", **ARCHITECTURES[MODEL])
    return make_demo_benchmarks(root / "benchmarks")


def pretrain(root: Path, rsna_flags: list[str]) -> dict:
    rsna_root = rsna_flags[rsna_flags.index("--rsna_root") + 1]
    return main_pretrain.main([
        "--model", MODEL, "--data_path", str(root / "data"), "--text_encoder", str(root / "cxr_bert"),
        "--resume", str(root / "MRM.pth"), "--from_begin", "--rsna_root", rsna_root,
        "--output_dir", str(root / "training"), "--device", "cpu", "--num_workers", "0",
        "--batch_size", "4", "--epochs", "2", "--max_epochs", "2", "--warmup_epochs", "1", "--lr", "1e-3",
        "--save_freq", "1", "--print_freq", "2"])


def evaluate(root: Path, data_flags: dict[str, list[str]]) -> dict[str, dict[str, float]]:
    model_flags = ["--checkpoint", str(root / "training" / NEWEST_CHECKPOINT), "--text_encoder", str(root / "cxr_bert"),
                   "--device", "cpu", "--num_workers", "0", "--batch_size", "32"]
    results = {}
    for script in EVALUATION_SCRIPTS:
        banner(script)
        output = ["--output", str(root / "results" / f"{script}.json")]
        results[script] = importlib.import_module(script).main(data_flags[script] + model_flags + output)
    return results


def print_summary(root: Path, results: dict[str, dict[str, float]], seconds: float) -> None:
    banner(f"demo finished in {format_duration(seconds)}")
    training = root / "training"
    validation = [json.loads(line).get("val_auroc") for line in (training / LOG_FILE).read_text().splitlines()]
    print(f"RSNA validation AUROC per epoch: {', '.join(f'{auroc:.4f}' for auroc in validation)}")
    for script, metrics in results.items():
        print(f"  {script:<26}" + "  ".join(f"{name} {value:.4f}" for name, value in metrics.items()))
    print(f"\nTraining data   {root / 'data' / 'train.csv'}")
    print(f"Checkpoints     {training}/checkpoint-*.pth (evaluated: {NEWEST_CHECKPOINT})")
    print(f"Training log    {training / LOG_FILE}   TensorBoard: tensorboard --logdir {training / 'logs'}")
    print(f"Metrics         {root / 'results'}/*.json")


def main(argv=None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="demo_output", help="directory for everything the demo writes")
    args = parser.parse_args(argv)
    root = Path(args.output)
    start = time.time()
    root.mkdir(parents=True, exist_ok=True)
    clear_previous_run(root)

    banner("generating demo data, text encoder, MRM weights and benchmarks")
    data_flags = generate_inputs(root)
    banner(f"pre-training {MODEL} for 2 epochs on the CPU")
    pretrain(root, data_flags["RSNA_zeroshot"])
    results = evaluate(root, data_flags)
    print_summary(root, results, time.time() - start)
    return results


if __name__ == "__main__":
    main()

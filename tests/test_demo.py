"""`./run.sh --demo` end to end: generated data, two epochs of alta_tiny, the five evaluations.

About a minute on two CPU cores, so it runs with the rest of the suite.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

from util.demo import EVALUATION_SCRIPTS

ROOT = Path(__file__).resolve().parents[1]


def test_run_sh_demo_trains_evaluates_and_reports_where_outputs_are(tmp_path):
    output = tmp_path / "demo"
    result = subprocess.run([str(ROOT / "run.sh"), "--demo", "--output", str(output)], cwd=ROOT,
                            capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHON": sys.executable})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    training = output / "training"
    log = [json.loads(line) for line in (training / "log.txt").read_text().splitlines()]
    assert [record["epoch"] for record in log] == [0, 1]
    assert all("val_auroc" in record for record in log)
    for name in ("checkpoint-newest.pth", "checkpoint-0.pth", "checkpoint-1.pth", "checkpoint-best_auroc.pth"):
        assert (training / name).is_file()
    assert any((training / "logs").glob("events.out.tfevents.*"))
    for script in EVALUATION_SCRIPTS:
        metrics = json.loads((output / "results" / f"{script}.json").read_text())["metrics"]
        assert metrics and all(0.0 <= value <= 1.0 for value in metrics.values())
    tail = result.stdout[-2000:]
    assert "demo finished" in tail and str(training / "log.txt") in tail and str(output / "results") in tail

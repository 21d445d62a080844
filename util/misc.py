"""Console output of the training loop: printing on rank 0 only, and progress lines with an ETA."""
import datetime
import time

from util.dist import is_main_process


def log(*values) -> None:
    """print() on the main process only (every rank runs the same loop; one copy is enough)."""
    if is_main_process():
        print(*values, flush=True)


def format_duration(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(seconds)))


class ProgressLine:
    """Prints `header [step/total]  name value ...  s/it  eta` every `every` steps, and at the
    first and the last step. The time per step is averaged over the steps so far."""

    def __init__(self, header: str, total: int, every: int):
        self.header = header
        self.total = total
        self.every = max(1, every)
        self.start = time.perf_counter()

    def update(self, step: int, values: dict[str, float]) -> None:
        done = step + 1
        if done % self.every and done not in (1, self.total):
            return
        per_step = (time.perf_counter() - self.start) / done
        fields = "  ".join(f"{name} {value:.3e}" if name == "lr" else f"{name} {value:.4f}"
                           for name, value in values.items())
        width = len(str(self.total))
        log(f"{self.header} [{done:>{width}}/{self.total}]  {fields}  {per_step:.2f} s/it  "
            f"eta {format_duration(per_step * (self.total - done))}")

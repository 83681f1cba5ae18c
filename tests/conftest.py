"""Shared test settings: few threads, no network, small hypothesis budgets."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from hypothesis import settings  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))
settings.register_profile("ci", max_examples=40, deadline=None)
settings.load_profile("ci")


class Background:
    """A Python snippet run in a subprocess beside the tests; ``result()`` waits for it and
    returns its last line of output (failing the test if it failed)."""

    def __init__(self, code: str, *args: str):
        import subprocess
        import sys

        self.proc = subprocess.Popen([sys.executable, "-c", code, *map(str, args)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def result(self, timeout: float = 300) -> str:
        out, err = self.proc.communicate(timeout=timeout)
        assert self.proc.returncode == 0, err
        return out.split()[-1]

    def stop(self) -> None:
        self.proc.kill()
        self.proc.communicate()

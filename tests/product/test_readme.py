"""Every Python block of the README is a complete program: each runs here, with its paths pointed at toy data."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import write_npz_dataset

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
PATH_LINES = ("MODEL, CHECKPOINT, ID_DATA = ", "OOD_DATA = ")


def test_the_readme_has_python_blocks_that_name_their_inputs():
    assert len(BLOCKS) >= 2
    for block in BLOCKS:  # each block says, in one line, what the user must set
        assert "MODEL, CHECKPOINT, ID_DATA = " in block


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(index, tmp_path):
    data = write_npz_dataset(tmp_path / "toy", n_train=400, n_test=30)
    np.savez(tmp_path / "ood.npz", x=np.random.default_rng(0).integers(0, 256, (40, 8, 8, 3), dtype=np.uint8))
    lines = []
    for line in BLOCKS[index].splitlines():
        if line.startswith(PATH_LINES[0]):
            line = f"MODEL, CHECKPOINT, ID_DATA = 'small_cnn', None, {str(data)!r}"
        elif line.startswith(PATH_LINES[1]):
            line = f"OOD_DATA = [{str(tmp_path / 'ood.npz')!r}, 'synthetic:uniform']"
        lines.append(line)
    program = "\n".join(["import torch", "torch.manual_seed(0)", *lines])
    done = subprocess.run([sys.executable, "-c", program], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip()  # each program prints its result


def test_the_readme_detector_list_is_the_registry():
    """The README's table of detectors is written from the registry; regenerate it with
    ``python -m watermark_ood.reporting.detector_list README.md``."""
    from watermark_ood.reporting.detector_list import detector_list, replace_block

    text = README.read_text()
    assert "<!-- DETECTORS -->" in text
    assert replace_block(text, detector_list()) == text, "README's detector list is stale; regenerate it"

"""Import paths of the flat package keep working for one release: an old module path warns once and is the very
module it moved to; a package that replaced a flat module resolves the old module's names lazily."""

import subprocess
import sys

import pytest

PROGRAM = """
import warnings
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    import watermark_ood.{old} as old
    import watermark_ood.{old} as again
import importlib
new = importlib.import_module("watermark_ood.{new}")
moved = [w for w in caught if issubclass(w.category, FutureWarning)]
assert len(moved) == 1 and "watermark_ood.{new}" in str(moved[0].message), [str(w.message) for w in caught]
assert old is again is new
"""


@pytest.mark.parametrize("old,new", [("detector", "detection.detector"), ("datasets", "data.readers"),
                                     ("learner", "watermark.learner"), ("tuning", "selection.auto_preset")])
def test_an_old_module_path_warns_once_and_is_the_new_module(old, new):
    done = subprocess.run([sys.executable, "-c", PROGRAM.format(old=old, new=new)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_a_package_that_replaced_a_module_forwards_its_names():
    from watermark_ood import data, evaluation, runtime, selection
    from watermark_ood.core.randomness import generator
    from watermark_ood.data.images import ImageSet
    from watermark_ood.runtime.inference import predict_logits
    from watermark_ood.selection.auto_score import select_detector

    assert data.ImageSet is ImageSet and evaluation.predict_logits is predict_logits
    assert runtime.generator is generator and selection.select_detector is select_detector
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        data.nothing_here

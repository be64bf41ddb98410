"""Every docstring example in the package runs and shows what it says (the examples are documentation)."""

import doctest
import importlib

import pytest

from test_layers import MODULES

WITH_EXAMPLES = sorted(name for name, path in MODULES.items() if ">>>" in path.read_text()
                       and not name.startswith("watermark_ood.cli") and name.count(".") > 1)


@pytest.mark.parametrize("name", WITH_EXAMPLES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0, f"{name}: {result.failed} of {result.attempted} failed"

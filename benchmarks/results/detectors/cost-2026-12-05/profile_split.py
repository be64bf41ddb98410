"""Split a cProfile of `calibrate --score auto` into forward passes, backward passes and the rest."""
import pstats, sys
st = pstats.Stats(sys.argv[1])
rows = {}
for (file, line, name), (cc, nc, tt, ct, callers) in st.stats.items():
    rows[(file, name)] = (nc, ct, tt)
def cum(fragment, name):
    return sum(v[1] for (f, n), v in rows.items() if fragment in f and n == name)
def calls(fragment, name):
    return sum(v[0] for (f, n), v in rows.items() if fragment in f and n == name)
print(f"select_detector {cum('selection/auto_score.py', 'select_detector'):.1f} s")
print(f"forward (Module._wrapped_call_impl, outermost) {cum('torch/nn/modules/module.py', '_wrapped_call_impl'):.1f} s")
print(f"backward (autograd.backward + autograd.grad) {cum('torch/autograd/__init__.py', 'backward') + cum('torch/autograd/__init__.py', 'grad'):.1f} s")
print(f"roc_curve calls {calls('sklearn/metrics/_ranking.py', 'roc_curve')}, {cum('sklearn/metrics/_ranking.py', 'roc_curve'):.1f} s")

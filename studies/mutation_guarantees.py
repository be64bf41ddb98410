"""The eight changes that broke the decision guarantees unnoticed (p-values at ties, the alarm's tail and its
beta-binomial, --fail-on-shift's level, a hand-edited threshold, the exported p-value and per-class thresholds,
the recorded bound), each applied alone against the tests that pin them: python studies/mutation_guarantees.py
Run on a clean checkout only (it rewrites source files, restoring each)."""
import subprocess, sys
from pathlib import Path
ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
CONF = ["tests/detection/test_conformal.py", "-k", "recorded_bound or ties_as or hand_edited or per_class_thresholds_are or exactly_below or beta_binomial_tail"]
EXP = CONF
M = [
 ("G1", "src/watermark_ood/detection/conformal.py", 'side="right"', 'side="left"', CONF),
 ("G2", "src/watermark_ood/detection/conformal.py", "betabinom.sf(rejected - 1, inputs, k, n + 1 - k)", "betabinom.sf(rejected, inputs, k, n + 1 - k)", CONF),
 ("G3", "src/watermark_ood/detection/conformal.py", 'out["p_value"] = out.get("beta_binomial_p", out["binomial_p"])', 'out["p_value"] = out["binomial_p"]', CONF),
 ("G4", "src/watermark_ood/pipelines/predict.py", 'test["fail"] = fail_on is not None and p < fail_on', 'test["fail"] = fail_on is not None and p < fail_on / 100', CONF),
 ("G5", "src/watermark_ood/detection/detector_file.py", 'if meta.get("threshold") is None or abs(threshold - float(meta["threshold"])) > 1e-6 * max(1.0, abs(threshold)):', 'if meta.get("threshold") is None:', CONF),
 ("G6", "src/watermark_ood/detection/export.py", "p_value = (1.0 + counts.float()) / (1.0 + sizes.float())", "p_value = (1.0 + counts.float()) / (2.0 + sizes.float())", EXP),
 ("G7", "src/watermark_ood/detection/export.py", "                    thresholds[c] = t\n", "                    thresholds[c] = float(detector.threshold)\n", EXP),
 ("G8", "src/watermark_ood/detection/conformal.py", '"guaranteed_false_rejection_at_most": k / (self.n + 1),', '"guaranteed_false_rejection_at_most": k / self.n,', CONF),
]
names = sys.argv[1:]
for name, path, old, new, tests in M:
    if names and name not in names: continue
    p = ROOT / path; src = p.read_text()
    assert src.count(old) == 1, (name, src.count(old))
    p.write_text(src.replace(old, new))
    try:
        r = subprocess.run(["nice", PY, "-m", "pytest", "-x", "-q", "-p", "no:xdist", *tests], cwd=ROOT, capture_output=True, text=True)
        print(name, "killed" if r.returncode else "SURVIVED", r.stdout.strip().splitlines()[-1][:150], flush=True)
    finally:
        p.write_text(src)

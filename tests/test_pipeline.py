"""The whole pipeline in one call (worldmodels.stages.pipeline.run_pipeline, scripts/pipeline.py).

Ha & Schmidhuber (2018, arXiv:1803.10122), section 3's procedure end to end -- collect, V,
encode, M, C, evaluation on held-out tracks beside the zero and a random controller, a
video. The end-to-end runs live where they are not repeated: the README's main command
(tests/test_readme.py: the VAE pipeline at the smoke preset, as a user runs it) and the VQ-VAE
pipeline at a tiny scale run twice, the second call finding every stage complete
(tests/test_vq_stages.py); this file keeps the script's interface.
"""

from __future__ import annotations

from tests.helpers import run_script


def test_pipeline_script_help():
    r = run_script("pipeline.py", "--help", timeout=60)
    assert r.returncode == 0, r.stderr
    assert "--preset" in r.stdout and "--episodes" in r.stdout


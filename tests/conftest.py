import os

# Tests run on 2 shared cores: one BLAS/torch thread each, no pygame window.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")

import torch  # noqa: E402

# CI has 2 cores and other jobs may share them: one torch thread per test process.
torch.set_num_threads(1)

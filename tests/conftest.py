import os

# Tests run on 2 shared cores: one BLAS/torch thread each, no pygame window.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")

import torch  # noqa: E402

# CI has 2 cores and other jobs may share them: one torch thread per test process.
torch.set_num_threads(1)

import signal  # noqa: E402

# A runner that starts the suite in the background (as `cmd &` does) hands it SIGINT
# ignored; Python then keeps SIG_IGN. The Ctrl-C tests need Python's usual handler.
signal.signal(signal.SIGINT, signal.default_int_handler)

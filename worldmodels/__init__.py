"""worldmodels: Ha & Schmidhuber's *World Models* (2018, arXiv:1803.10122) in PyTorch.

V (a convolutional VAE) compresses CarRacing frames to z, M (an MDN-RNN) predicts the
next z, and C (a linear controller on [z, h]) is evolved with CMA-ES.
"""

__version__ = "0.1.0"

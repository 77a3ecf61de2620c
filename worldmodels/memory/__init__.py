"""M, the memory of Ha & Schmidhuber, *World Models* (2018, arXiv:1803.10122).

* :class:`MDNRNN`, :func:`gmm_nll`, :func:`mixture_nll`, :func:`sample_next`: an LSTM whose
  hidden state parameterises a mixture density network (Bishop, *Mixture Density Networks*,
  1994; the MDN-RNN of Graves, *Generating Sequences With Recurrent Neural Networks*, 2013,
  arXiv:1308.0850): one K-component Gaussian mixture per latent dimension for ``z_{t+1}``, plus
  reward and done heads; temperature sampling for the dream; :meth:`MDNRNN.step` for inference.
* :class:`CodeRNN`, :func:`sample_next_codes`: the same
  memory for a VQ-VAE latent (van den Oord et al. 2017, arXiv:1711.00937), a categorical over
  the codebook per grid cell; :func:`codes_to_latent`: a code grid's quantised latent z_q,
  flat, what the controller reads beside ``h`` when M is discrete.

Heads, mixture NLLs and sampling run in fp32 under autocast; M's training objective is
:func:`worldmodels.stages.train_mdnrnn.sequence_losses`.
"""

from worldmodels.memory.mdnrnn import (
    MDNRNN,
    CodeRNN,
    CodeRNNOutput,
    MDNOutput,
    build_mdnrnn,
    codes_to_latent,
    gmm_nll,
    mixture_nll,
    sample_next,
    sample_next_codes,
)

__all__ = [
    "MDNRNN",
    "MDNOutput",
    "gmm_nll",
    "mixture_nll",
    "sample_next",
    "CodeRNN",
    "CodeRNNOutput",
    "sample_next_codes",
    "codes_to_latent",
    "build_mdnrnn",
]

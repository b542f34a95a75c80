"""Pure functional losses, shared by the methods, the analysis views and the tests.

``kd_loss``, ``dkd_loss`` and ``dkd_terms`` are the public names outside checks call."""
from kdengine.losses.logits import (dkd_loss, dkd_per_sample, dkd_terms, entropy, kd_loss,
                                    kd_loss_unscaled, kl_div, logit_mse, soften)

__all__ = ["dkd_loss", "dkd_per_sample", "dkd_terms", "entropy", "kd_loss", "kd_loss_unscaled",
           "kl_div", "logit_mse", "soften"]

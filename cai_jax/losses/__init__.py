"""Pure loss functions over arrays: LM, Bradley-Terry preference, DPO, PPO, KL."""
from cai_jax.losses.dpo import dpo_loss, dpo_metrics, implicit_rewards
from cai_jax.losses.kl import (AdaptiveKLController, FixedKLController, KLControllerState,
                               kl_k1, kl_k3, kl_penalized_rewards)
from cai_jax.losses.lm import masked_lm_loss, token_logprobs
from cai_jax.losses.ppo import gae, masked_mean, policy_loss, value_loss, whiten
from cai_jax.losses.preference import (expected_calibration_error, preference_loss,
                                       preference_metrics, soft_bt_cross_entropy)

__all__ = [
    "AdaptiveKLController", "FixedKLController", "KLControllerState", "dpo_loss", "dpo_metrics",
    "expected_calibration_error", "gae", "implicit_rewards", "kl_k1", "kl_k3",
    "kl_penalized_rewards", "masked_lm_loss", "masked_mean", "policy_loss", "preference_loss",
    "preference_metrics", "soft_bt_cross_entropy", "token_logprobs", "value_loss", "whiten",
]

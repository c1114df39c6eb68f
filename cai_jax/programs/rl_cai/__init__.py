"""RL-CAI programs: AI-feedback labels, the preference model, PPO with a KL penalty, DPO."""

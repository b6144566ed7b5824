"""Reinforcement learning from rewards: reward functions, reward models, PPO, curricula and sandboxes."""

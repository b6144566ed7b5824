"""Trainers on one shared base (checkpointing, resume, logging, launch): training stages first."""

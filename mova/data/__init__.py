"""Data formats, chat templates and collators."""

"""Helpers every layer may use, knowing nothing of networks: argument checks, npz + JSON files,
warnings, progress bars, named random-key tags and the offline data sets."""

"""A paper as one run: its member experiments trained and evaluated (runner), its tables filled
from their results (tables) and its figures drawn (figures, rho)."""

"""mkmsr: session-based recommendation from micro-behaviours and item knowledge (MKM-SR, SIGIR 2020)."""
__version__ = "0.1.0"

"""mosaicod: the Mosaico data platform server, in pure Python."""

__version__ = "0.7.0"

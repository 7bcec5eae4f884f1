"""qsp-compile: bundle -> hls4ml HLS project, verified bit-exact by C simulation.

Modules (hls4ml is imported only by the ones that need it, on use):
``precision`` (qspec -> per-layer ap types), ``transforms`` (exact mask folding and
dead-channel removal), ``deploy`` (bundle graph -> torch nn.Sequential), ``extension``
(qsp's HLS layers for hls4ml), ``hls4ml_project`` (config, strategies, convert),
``csim`` (standalone testbench), ``verify`` (three-way comparison), ``pipeline``
(:func:`compile_bundle`), ``cli`` (``qsp-compile``).
"""


def compile_bundle(*args, **kwargs):
    from .pipeline import compile_bundle as _cb

    return _cb(*args, **kwargs)


__all__ = ["compile_bundle"]

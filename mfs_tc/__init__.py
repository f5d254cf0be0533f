"""mfs-tc: MFS multi-stage flow scheduling for LLM serving on Linux tc + eBPF."""

__version__ = "0.1.0"

"""cxl-testbed: QEMU/libvirt testbeds sharing an emulated CXL multi-headed device."""

__version__ = "0.1.0"

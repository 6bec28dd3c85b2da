"""TensorRT for Jetson and NVIDIA GPUs: build kits made here, engines built and profiled on the device."""

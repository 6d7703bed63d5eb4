"""The runtimes an exported neck is verified and timed in, and the ncnn export."""

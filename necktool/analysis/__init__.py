"""What a neck costs: FLOPs, parameters and memory of one forward (profiling), across sizes
(sweep), and its latency (bench)."""

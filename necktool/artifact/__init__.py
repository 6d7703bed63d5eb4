"""What an exported file is: the metadata necktool writes into it, the input shapes it
serves and which stage each node belongs to (torch-free)."""

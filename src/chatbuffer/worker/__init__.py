"""Claims due buffers and answers them."""

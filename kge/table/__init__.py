"""The entity table as stored: sparse row Adam, 16-bit storage, block sparsity, quantized formats."""

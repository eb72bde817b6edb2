"""Real-time streaming media inference: a graph of asyncio stages over a preallocated frame ring."""

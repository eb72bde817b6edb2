"""torch.nn.Modules the stages run, with their weight loading."""

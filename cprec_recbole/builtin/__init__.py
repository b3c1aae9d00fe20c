"""Built-in plugins: each module registers its things through the public hooks, like any plugin."""

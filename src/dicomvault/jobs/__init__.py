"""Long-running jobs: retrieval/export now; scrub, drill, restore, retention later."""

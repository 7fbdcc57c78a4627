"""pbuild's tests in layers: unit/ (modules in process), cli/ (the CLI on fixture workspaces), e2e/ (real
peers, full image builds, launcher runs); support/ holds the helpers they share."""

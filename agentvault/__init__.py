"""The AgentVault server project: settings, routing and shared API plumbing."""

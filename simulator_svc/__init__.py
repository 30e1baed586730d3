"""simulator_svc: the simulated client and the operator tools."""

"""The Tessera CDK app: one construct per concern (`infra.constructs`), two stacks using them."""

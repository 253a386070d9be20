"""The validator service: checks that return a verdict, evidence and feedback a retry can use."""

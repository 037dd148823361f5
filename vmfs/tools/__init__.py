"""What is not served: `vmfs bench`, `vmfs replay`, `vmfs diagram`, `vmfs demo`."""

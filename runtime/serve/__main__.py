from rnnx.runtime.serve.cli import main

main()

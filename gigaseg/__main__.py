from gigaseg.jobs.cli import main

main()

module herald.dev/examples/shipping

go 1.19

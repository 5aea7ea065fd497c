// shipping (Go, standard library only): ships each order.paid.v1 it is delivered and publishes
// order.shipped.v1 by posting the data to /events/{type}, letting herald fill id, source and time.
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"os/signal"
	"syscall"
)

type paid struct {
	Order  int     `json:"order"`
	Amount float64 `json:"amount"`
}

type shipped struct {
	Order    int    `json:"order"`
	Carrier  string `json:"carrier"`
	Tracking string `json:"tracking"`
}

func env(key, fallback string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return fallback
}

func main() {
	heraldURL := env("HERALD_URL", "http://127.0.0.1:8250")
	port := env("PORT", "8080")

	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		// Binary mode delivery: the data is the body; the attributes are ce-* headers.
		var p paid
		if err := json.NewDecoder(r.Body).Decode(&p); err != nil {
			// Not retryable: a 400 sends the event straight to the dead-letter stream.
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		body, _ := json.Marshal(shipped{Order: p.Order, Carrier: "DHL", Tracking: fmt.Sprintf("TRK%06d", p.Order)})
		resp, err := http.Post(heraldURL+"/events/order.shipped.v1", "application/json", bytes.NewReader(body))
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusNoContent {
			msg, _ := io.ReadAll(resp.Body)
			http.Error(w, fmt.Sprintf("publish answered %d: %s", resp.StatusCode, msg), http.StatusServiceUnavailable)
			return
		}
		fmt.Printf("shipping: order %d shipped (delivery attempt %s)\n", p.Order, r.Header.Get("Herald-Delivery-Attempt"))
		w.WriteHeader(http.StatusNoContent)
	})

	server := &http.Server{Addr: "127.0.0.1:" + port}
	go func() {
		stop := make(chan os.Signal, 1)
		signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
		<-stop
		server.Close()
	}()
	if err := server.ListenAndServe(); err != nil && err != http.ErrServerClosed {
		log.Fatal(err)
	}
}

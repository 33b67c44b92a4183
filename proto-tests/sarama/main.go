// sarama-client: a small Go program on Sarama (Debian's golang-github-shopify-sarama-dev) that
// test_sarama.py runs against a node, so a Go client with its own protocol code (not
// librdkafka) produces, fetches and consumes in a group. It prints what it saw; the test
// checks it. Every wait is bounded by -timeout.
//
//	produce -topic T -n N [-codec C] [-idempotent]   prints "offset<TAB>value" per message
//	consume -topic T -n N                           partition 0 from the oldest offset
//	group   -topic T -group G -n N                  consumes N records as a group member and
//	                                                commits them, then leaves the group
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/Shopify/sarama"
)

var codecs = map[string]sarama.CompressionCodec{
	"none": sarama.CompressionNone, "gzip": sarama.CompressionGZIP,
	"snappy": sarama.CompressionSnappy, "lz4": sarama.CompressionLZ4,
	"zstd": sarama.CompressionZSTD,
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "sarama-client: "+format+"\n", args...)
	os.Exit(1)
}

func main() {
	if len(os.Args) < 2 {
		fail("usage: sarama-client produce|consume|group [flags]")
	}
	mode := os.Args[1]
	fs := flag.NewFlagSet(mode, flag.ExitOnError)
	brokers := fs.String("b", "127.0.0.1:9092", "bootstrap broker")
	topic := fs.String("topic", "", "topic")
	group := fs.String("group", "", "consumer group")
	n := fs.Int("n", 1000, "records")
	codec := fs.String("codec", "none", "none|gzip|snappy|lz4|zstd")
	idempotent := fs.Bool("idempotent", false, "idempotent producer")
	timeout := fs.Duration("timeout", 60*time.Second, "bound on the whole run")
	_ = fs.Parse(os.Args[2:])
	if os.Getenv("SARAMA_DEBUG") != "" {
		sarama.Logger = log.New(os.Stderr, "[sarama] ", log.Lmicroseconds)
	}

	conf := sarama.NewConfig()
	// The newest protocol this Sarama knows; its default (0.8.2) speaks versions Kafka 4 and
	// Sluice no longer serve.
	conf.Version = sarama.V2_1_0_0
	conf.ClientID = "sarama-client"
	time.AfterFunc(*timeout, func() { fail("%s did not finish within %s", mode, *timeout) })

	switch mode {
	case "produce":
		c, ok := codecs[*codec]
		if !ok {
			fail("unknown codec %q", *codec)
		}
		produce(conf, *brokers, *topic, *n, c, *idempotent)
	case "consume":
		consume(conf, *brokers, *topic, *n)
	case "group":
		consumeGroup(conf, *brokers, *topic, *group, *n)
	default:
		fail("unknown mode %q", mode)
	}
}

func produce(conf *sarama.Config, brokers, topic string, n int, codec sarama.CompressionCodec, idempotent bool) {
	conf.Producer.RequiredAcks = sarama.WaitForAll
	conf.Producer.Compression = codec
	conf.Producer.Return.Successes = true
	conf.Producer.Partitioner = sarama.NewManualPartitioner
	conf.Producer.Flush.Frequency = 5 * time.Millisecond
	if idempotent {
		conf.Producer.Idempotent = true
		conf.Net.MaxOpenRequests = 1
	}
	p, err := sarama.NewAsyncProducer([]string{brokers}, conf)
	if err != nil {
		fail("producer: %v", err)
	}
	offsets := make(map[string]int64, n)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < n; i++ {
			select {
			case m := <-p.Successes():
				v, _ := m.Value.Encode()
				offsets[string(v)] = m.Offset
			case e := <-p.Errors():
				fail("delivery of %v failed: %v", e.Msg.Value, e.Err)
			}
		}
	}()
	for i := 0; i < n; i++ {
		p.Input() <- &sarama.ProducerMessage{
			Topic: topic, Partition: 0,
			Key:   sarama.StringEncoder(fmt.Sprintf("k%d", i%10)),
			Value: sarama.StringEncoder(fmt.Sprintf("sarama-%d", i)),
		}
	}
	<-done
	if err := p.Close(); err != nil {
		fail("close: %v", err)
	}
	lines := make([]string, 0, n)
	for v, o := range offsets {
		lines = append(lines, fmt.Sprintf("%d\t%s", o, v))
	}
	sort.Slice(lines, func(a, b int) bool { return offsetOf(lines[a]) < offsetOf(lines[b]) })
	fmt.Println(strings.Join(lines, "\n"))
}

func offsetOf(line string) int64 {
	var o int64
	fmt.Sscanf(line, "%d", &o)
	return o
}

func consume(conf *sarama.Config, brokers, topic string, n int) {
	c, err := sarama.NewConsumer([]string{brokers}, conf)
	if err != nil {
		fail("consumer: %v", err)
	}
	pc, err := c.ConsumePartition(topic, 0, sarama.OffsetOldest)
	if err != nil {
		fail("consume partition: %v", err)
	}
	for i := 0; i < n; i++ {
		select {
		case m := <-pc.Messages():
			fmt.Printf("%d\t%s\n", m.Offset, m.Value)
		case e := <-pc.Errors():
			fail("fetch: %v", e.Err)
		}
	}
	pc.Close()
	c.Close()
}

// member consumes until `left` records were marked in this process, then cancels.
type member struct {
	mu     sync.Mutex
	left   int
	cancel context.CancelFunc
}

func (m *member) Setup(sarama.ConsumerGroupSession) error   { return nil }
func (m *member) Cleanup(sarama.ConsumerGroupSession) error { return nil }
func (m *member) ConsumeClaim(s sarama.ConsumerGroupSession, claim sarama.ConsumerGroupClaim) error {
	for msg := range claim.Messages() {
		m.mu.Lock()
		if m.left == 0 {
			m.mu.Unlock()
			return nil
		}
		fmt.Printf("%d\t%s\n", msg.Offset, msg.Value)
		s.MarkMessage(msg, "")
		m.left--
		if m.left == 0 {
			m.cancel()
		}
		m.mu.Unlock()
	}
	return nil
}

func consumeGroup(conf *sarama.Config, brokers, topic, group string, n int) {
	conf.Consumer.Offsets.Initial = sarama.OffsetOldest
	// Commits are made by Close (and every second): the test checks the next member resumes.
	conf.Consumer.Offsets.CommitInterval = time.Second
	// With a retention this Sarama commits with OffsetCommit v2; without one it uses v1, which
	// Kafka 4 removed (KIP-896) and Sluice, like Kafka 4, does not serve.
	conf.Consumer.Offsets.Retention = 24 * time.Hour
	g, err := sarama.NewConsumerGroup([]string{brokers}, group, conf)
	if err != nil {
		fail("consumer group: %v", err)
	}
	go func() {
		for e := range g.Errors() {
			fail("group: %v", e)
		}
	}()
	ctx, cancel := context.WithCancel(context.Background())
	m := &member{left: n, cancel: cancel}
	for ctx.Err() == nil {
		if err := g.Consume(ctx, []string{topic}, m); err != nil {
			fail("consume: %v", err)
		}
	}
	if err := g.Close(); err != nil {
		fail("close: %v", err)
	}
}

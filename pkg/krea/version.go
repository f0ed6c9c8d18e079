package krea

// Version is the kreabus release this package belongs to. The client sends
// it in its User-Agent ("kreabus/<Version>") so Krea can tell our traffic
// apart when something goes wrong on either side.
const Version = "0.1.0"
